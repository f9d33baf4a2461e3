"""The platform's technical workflows, one module each. Every module here is imported at
start-up and registers its definition; adding a workflow is adding a module."""
