"""The use cases: each rule of what a user can do has its one home here.

The CLI, the REST API and the dashboard are thin callers of these functions; the
pipelines sit below and are started from here. Each function takes a `Kit` (the
providers, the store, the secrets) and, when it starts or stops runs, the
`Engine`:

- `deploy`: deploy, restart, rollback (one service or all) with the one
  DeploymentEnv `Kit.deployment_env` builds;
- `branches`: create, reset and delete database branches, with the in-use guard;
- `previews`: close a preview; record a push from the API;
- `runs`: cancel and rerun;
- `environments`: the one read model of environments and their services, and
  deleting one;
- `lifecycle`: `down`, everything the project started stopped, its data kept;
- `restore`: production's database back to a moment;
- `reconcile`: desired versus actual, after a crash;
- `runtime`: the pipelines' workers, dispatcher and periodic reconcile.
"""
