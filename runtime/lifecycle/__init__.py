"""Long-running containers: records (state.py), the monitor (monitor.py), logs (logs.py), exec (exec.py).

Never imported on run.py's path; `pirun run -d/--name` and the container subcommands load what they use.
"""
