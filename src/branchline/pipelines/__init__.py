"""The reference's workflows, written against the engine and the providers.

- `testing`: every push and pull request update, on an ephemeral database branch.
- `preview`: after testing succeeds for a pull request, its live environment.
- `cleanup`: when a pull request closes (or its preview expires), all of it removed.
- `dispatch`: which events start which runs, each event exactly once.

Each workflow module builds plain engine data (jobs of steps); the provider work
lives in `actions`, registered under names the steps call.
"""
