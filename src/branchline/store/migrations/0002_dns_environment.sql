-- DNS records belong to an environment (production, preview-<pr>, local) so that
-- cleanup and reconcile can find everything one environment owns. NULL: shared
-- records (the apex, verification TXT records) that no single environment owns.
ALTER TABLE branchline.dns_records ADD COLUMN environment text;

CREATE INDEX dns_records_environment_idx
    ON branchline.dns_records (project, environment, name);
