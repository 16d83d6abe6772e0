-- A batch of token issuances is written with one statement in an implicit
-- transaction (store-postgres/src/issuance.rs, ADR 0040). The statement
-- ends by calling this with what must hold for the batch to stand (every
-- assertion jti burned, the lane's head where the writer read it); an
-- exception undoes the whole statement, and the writer then applies the
-- batch the long way, change by change where it must.
CREATE FUNCTION mandate_batch_holds(ok boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN
    RAISE EXCEPTION 'mandate: the batch does not hold' USING ERRCODE = 'MB001';
  END IF;
  RETURN true;
END
$$;
