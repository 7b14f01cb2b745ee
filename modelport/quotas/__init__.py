"""Quotas: per-deployment requests and tokens per minute, enforced at admission.

    rates.py      what a deployment's limits are: platform defaults, admin caps, the owner's own
    limiter.py    the check itself, on the `limits` library's async storage (memory or Redis)
    estimate.py   the tokens a request is charged at admission (prompt estimate + max_tokens)
    settle.py     the tokens it used beyond that, charged once its usage is recorded
"""
