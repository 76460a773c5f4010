-- The order certificates were issued in. issued_at has a resolution of a
-- second and serials are random, so two certificates issued within one
-- second (a reset and the enrollment after it, a renewal) had no order.
ALTER TABLE certificates ADD COLUMN issue_order INTEGER NOT NULL DEFAULT 0;

-- Earlier rows keep their order by time; ties stay ordered by serial.
UPDATE certificates SET issue_order = (
    SELECT COUNT(*) FROM certificates AS earlier
    WHERE earlier.issued_at < certificates.issued_at
       OR (earlier.issued_at = certificates.issued_at AND earlier.serial <= certificates.serial)
);
