"""Client authentication: JWT (``jwt`` with keys from ``jwks``), API keys (``apikey``) and HTTP Basic (``basic``).

Each authenticator turns one request's credential into an ``Identity`` or a ``Rejection`` (``outcome``); the auth
stage (``consulgw.pipeline.stages.auth``) counts rejections, raises them, and sets the trusted identity headers.
"""
