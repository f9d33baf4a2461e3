"""The technical-workflow engine and the platform's 15 technical workflows."""
