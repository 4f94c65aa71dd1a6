"""Response caching: RFC 9111 rules (``control``), keys (``keys``), stored answers (``entry``), the memory and Redis
stores (``memory``, ``redisstore``), single-flight fills (``flight``) and the process-wide owner (``owner``). The
pipeline step that uses them is :mod:`consulgw.pipeline.stages.cache`."""
