"""The application shell: configuration, the ``colombe`` CLI and process supervision."""
