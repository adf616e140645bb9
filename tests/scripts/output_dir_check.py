"""`check_output_dir` with --overwrite_output_dir under whatever launcher started this script, rank 1 looking late.

Used by tests/test_distributed.py: OUT holds only an earlier run's checkpoint; each process records what it saw in
OUT/../seen_<rank>.json. Every process must see the checkpoint: the main process may delete it only once all have
looked (the deletion ends at a barrier that every process has to reach).
"""

import json
import os
import sys
import time

from accelerate import PartialState

from hf_kd import checks
from hf_kd.trainers import DistillationArguments

out = sys.argv[1]
args = DistillationArguments(output_dir=out, overwrite_output_dir=True, use_cpu=True, report_to=[])
rank = PartialState().process_index
look = checks._previous_run


def late_look(folder):
    if rank == 1:
        time.sleep(3)  # the main process is done looking long before
    seen = look(folder)
    with open(os.path.join(os.path.dirname(out), f"seen_{rank}.json"), "w") as f:
        json.dump(seen, f)
    return seen


checks._previous_run = late_look
checks.check_output_dir(args)
PartialState().wait_for_everyone()  # the previous code left rank 0 at its barrier: meet it, so both end
