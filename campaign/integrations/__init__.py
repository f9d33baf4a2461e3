"""Clients of the external services (analytics, audience, deliverability), one module each, on
the shared HTTP layer of :mod:`campaign.integrations.http`."""
