"""Who may do what: principals (admin tokens), roles and their permissions.

Every adapter asks this package; none re-implements a rule of it: an adapter hands over the
`Authorization` value it received (ironcore.access.callers) and checks permissions with
ironcore.access.roles.
"""
