"""Who may do what: principals and scopes (`principals`), API keys and the
open-on-loopback rule (`auth`), JWT bearer tokens (`jwt`), the ASGI middleware that
resolves and checks a request's principal (`middleware`), the cross-site guard of open
mode (`crosssite`), per-principal rate limits (`ratelimit`) and the `keys` commands.

May import `config`, `errors`, `logs`, `models`, `redact` and `store`; never the
engine, the API or targets.
"""
