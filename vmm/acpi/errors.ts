/**
 * The one error type of the ACPI table builder.
 *
 * @module
 */

/**
 * Raised when the machine description cannot be expressed in ACPI tables (a
 * name, an id, a count or an address outside what the encoding or the table
 * area holds); the message names the input.
 */
export class AcpiError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(`acpi: ${message}`);
    this.name = "AcpiError";
  }
}
