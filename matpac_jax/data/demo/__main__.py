"""python -m matpac_jax.data.demo --output DIR --frontend matpac [--num_clips N]"""

import sys

from matpac_jax import cli
from matpac_jax.data.demo import main

sys.exit(cli.run(main))
