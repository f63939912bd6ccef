-- An ordinary migration after a no-transaction one (refinery again).
ALTER TABLE online_test.items ADD COLUMN note text;
