"""Composite routes (``consulgw/composites/<name>``): one client call answered by calling several services
concurrently and merging their JSON. ``routes`` feeds them to the route table, ``composer`` is the terminal step that
makes the calls, ``build`` compiles each composite's chain when the view is built."""
