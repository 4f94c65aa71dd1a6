"""Rate limiting: GCRA arithmetic (``gcra``), the in-process store (``local``) and the Redis store (``redisstore``).

Why GCRA rather than a sliding window: GCRA (the Generic Cell Rate Algorithm, i.e. a token bucket expressed as one
"theoretical arrival time" per key) is exact, needs one integer of state per key (one Redis string, one dict slot),
refills smoothly instead of doubling at window edges like a fixed window, and needs neither the O(N) timestamp log
of an exact sliding window nor the approximation of a sliding-window counter. The headers fall out of the same
number: how far the key's theoretical arrival time is ahead of now.

Semantics of ``RateLimitPolicy(requests=N, per=P, burst=B)``: a fresh (or long idle) key admits ``N + B`` requests
at once, then one more every ``P / N`` seconds; the bucket is full again ``P`` seconds (plus ``B * P / N``) after
the last admitted request. With ``burst=0`` a client gets exactly N in any burst and a steady N per P.
"""
