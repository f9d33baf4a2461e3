"""The platform's technical workflows, one module each (a workflow that outgrows one module keeps its
definition and activities in the module named after it, its helpers in modules beside it, e.g.
``cleanup_retention.py``). Every module here is imported at start-up; a module with a
``definition`` registers it, so adding a workflow is adding a module."""
