"""The static HTML report of a built folder."""
