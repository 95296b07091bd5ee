"""Run folders on local disks and object stores (gs://): one path layer, logs, and run-state decisions."""
