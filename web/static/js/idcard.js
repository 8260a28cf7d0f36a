// Mainland resident ID numbers (GB 11643-1999): 17 digits and an ISO 7064 MOD 11-2 check
// character. The server checks the same rule; this only gives the outlet instant feedback.

const WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK = "10X98765432";

/** The check character for the first 17 digits. */
export function checkDigit(first17) {
  let sum = 0;
  for (let i = 0; i < 17; i += 1) sum += Number(first17[i]) * WEIGHTS[i];
  return CHECK[sum % 11];
}

/** True when `value` is an 18-character ID number with a valid date and check character. */
export function isValidIdNumber(value) {
  const id = String(value || "").trim().toUpperCase();
  if (!/^\d{17}[\dX]$/.test(id)) return false;
  const year = Number(id.slice(6, 10));
  const month = Number(id.slice(10, 12));
  const day = Number(id.slice(12, 14));
  const date = new Date(Date.UTC(year, month - 1, day));
  if (year < 1900 || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day || date > new Date()) {
    return false;
  }
  return checkDigit(id) === id[17];
}

export function isValidPhone(value) {
  return /^1\d{10}$/.test(String(value || "").trim());
}
