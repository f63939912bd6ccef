-- A table, and the session settings the runner applied (read by the test).
CREATE TABLE online_test.items (id bigint PRIMARY KEY, label text NOT NULL);
CREATE TABLE online_test.session AS
    SELECT current_setting('lock_timeout') AS lock_timeout,
           current_setting('statement_timeout') AS statement_timeout;
