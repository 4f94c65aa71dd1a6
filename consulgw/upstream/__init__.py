"""Everything between the gateway and upstream instances: pools, balancers, breakers, headers, transport."""
