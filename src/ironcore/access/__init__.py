"""Who may do what: principals (admin tokens), roles and their permissions.

Every adapter asks this package; none re-implements a rule of it. The REST API's part (reading
the bearer token from a request, caching the answer) is ironcore.api.auth.
"""
