"""Device mesh, logical-axis sharding rules, multi-host start-up; used by both phases."""
from parallel.mesh import MESH_AXES, create_mesh, initialize_distributed
from parallel.sharding import (
    DEFAULT_RULES,
    batch_sharding,
    create_sharded_model,
    logical_to_spec,
    state_sharding,
    use_mesh,
    with_logical_constraint,
)
