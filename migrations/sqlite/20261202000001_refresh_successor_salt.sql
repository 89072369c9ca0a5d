-- A rotated refresh token keeps the random salt its successor was derived with
-- (successor = HMAC(refresh key, token, salt)), so that the refresh key and an old token alone no
-- longer give every later token: the salts live only here. NULL until the token is rotated, and
-- for tokens rotated by a release before this one. The previous release ignores the column.
ALTER TABLE refresh_token ADD COLUMN successor_salt BLOB;
