-- The demo source table: what the owning application writes and the CDC pipeline copies.
-- Runs once, in the MYSQL_DATABASE of a new source-db container.
CREATE TABLE user (
  id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  number      VARCHAR(64)  NOT NULL,
  name        VARCHAR(64)  NULL,
  avatar      VARCHAR(255) NULL,
  update_time DATETIME     NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  UNIQUE KEY uq_number (number),
  KEY ix_update_time (update_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO user (number, name, avatar) VALUES
  ('u-0001', 'Ann',   'https://img.example.com/a/1.png'),
  ('u-0002', 'Bob',   NULL),
  ('u-0003', 'Chloe', 'https://img.example.com/a/3.png'),
  ('u-0004', 'Dan',   'https://img.example.com/a/4.png');
