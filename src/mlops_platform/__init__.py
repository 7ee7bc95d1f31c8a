"""The MLOps platform's own programs: api-server, model-server, a traffic generator, and the
database image's entrypoint (`postgres`).

Standalone workloads: nothing here imports the lab or the notebook library, so each program
could ship as a container image unchanged. The image tag a program is started with (env
`IMAGE`) picks its release, and the release picks its behaviour: see `releases`.
"""
