"""Frozen value types shared by discovery, routing and the request pipeline. Imports nothing from consulgw."""
