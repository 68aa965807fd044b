"""Who may do what: principals (admin tokens, service accounts), roles and their permissions.

Every adapter asks this package; none re-implements a rule of it: an adapter hands over the
`Authorization` value it received (ironcore.access.callers) and checks permissions with
ironcore.access.roles, naming the resource the call acts on (a service account acts only in
its own project).
"""
