"""Random hostile calls of every public op, run in a pool of child processes.

``calls`` builds call number ``i`` of a run from ``(seed, i)`` alone (so any call can be
replayed), ``worker`` runs calls in a child process and reports each outcome, and
``runner`` keeps a pool of workers busy, restarts one that crashes or hangs, and counts:

- crashes: the worker died inside a call (a signal, or an exit);
- hangs: a call ran past the per-call timeout;
- unexpected: an exception other than TypeError, ValueError or MemoryError, an error
  message that leaks C++ (``std::``, ``vector::``, ``bad_alloc``) or a backend's
  ``internal:`` check (validation let the call through), or an input array the call
  changed (only gemm's ``c`` and batch_norm's running statistics may change).

Run from the repository root (``--help`` lists the options)::

    python -m tests.fuzz --calls 50000
    python -m tests.fuzz --seed 7 --replay 1234      # one call, in this process

``tests/test_fuzz.py`` runs a bounded slice in the test suite.
"""
