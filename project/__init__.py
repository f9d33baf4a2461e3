"""The deployment's wiring, above both apps: settings and the environment they are parsed from
(:mod:`project.config`), the Celery app, the root URLconf, the WSGI/ASGI entry points, and
``make run``'s launcher of the Procfile (:mod:`project.run`).

Why a package of its own: ``campaign`` (the domain) and ``workflows`` (the engine) are Django apps
that know nothing of how an instance is assembled; this package imports both, neither imports it
(tests/test_layers.py checks it). The one exception is ``campaign/__init__.py``, which re-exports
the Celery app so that ``celery -A campaign`` finds it (``celery -A project`` works too).
"""
