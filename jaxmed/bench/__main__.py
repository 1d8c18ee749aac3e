"""``python -m jaxmed.bench --point JSON | --cluster-grid JSON --out PATH``: the child process of a
grid point (started by :func:`jaxmed.bench.runner.run_point_subprocess`)."""

import sys

from jaxmed.bench.runner import _child

sys.exit(_child(sys.argv[1:]))
