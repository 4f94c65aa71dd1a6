"""The per-request pipeline: small stateless stages folded once per service policy, ending in the forwarder."""
