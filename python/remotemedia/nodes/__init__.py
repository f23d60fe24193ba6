"""Node types that ship with the package."""
