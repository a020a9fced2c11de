-- The demo destination table: the CDC copy of source-db's user table, keyed by number.
-- Seeded with the copy's usual defects: u-0003 is missing, u-0004 has a stale name.
CREATE TABLE user (
  number      VARCHAR(64)  NOT NULL PRIMARY KEY,
  name        VARCHAR(64)  NULL,
  avatar      VARCHAR(255) NULL,
  update_time DATETIME     NULL,
  KEY ix_update_time (update_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO user (number, name, avatar, update_time) VALUES
  ('u-0001', 'Ann',    'https://img.example.com/a/1.png', NOW()),
  ('u-0002', 'Bob',    NULL,                              NOW()),
  ('u-0004', 'Daniel', 'https://img.example.com/a/4.png', NOW());
