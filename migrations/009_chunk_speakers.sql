-- Everyone heard in a chunk, its main speaker (`speaker`, which `search --speaker` filters on)
-- first: more than one where a short turn was joined to a neighbour. NULL for chunks written
-- before this column, which search reads as the main speaker alone; filling them here would
-- rewrite every chunk and its index entries.
ALTER TABLE segments ADD COLUMN speakers text[];
