"""Testing helpers shipped with girder: the backend conformance suite and a pytest plugin."""
