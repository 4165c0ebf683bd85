"""Plugin Host."""
