"""Renderers: turn results into text for people, monitoring systems or JSON.
They format; they never decide a verdict."""
