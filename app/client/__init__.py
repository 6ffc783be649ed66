"""The `retune` command-line client: talks to a Retune service over HTTP only.

It imports httpx, typer, rich and the standard library, never the service's own packages (no torch), so it can be
installed and run on a machine that only reaches the API.
"""
