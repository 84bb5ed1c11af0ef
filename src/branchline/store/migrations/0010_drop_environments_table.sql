-- Environments are derived (production, and previews from `previews`): the table
-- of the first schema was never written, and `branchline status` read it empty.
DROP TABLE IF EXISTS branchline.environments;
