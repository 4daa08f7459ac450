"""Example prefopt plugin."""
