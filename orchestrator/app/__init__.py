"""Use cases: up, promote, rollback, down, ps/logs/exec, verify (read -> core plans -> io applies)."""
