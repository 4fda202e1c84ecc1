"""pytest plugin (entry point `girder`): fixtures for testing code that uses girder."""
