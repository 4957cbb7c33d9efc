/**
 * A JSON parser that keeps every number exact: integers become `bigint`, so ids above 2^53 in the
 * golden vectors' manifest survive (`JSON.parse` would round them to the nearest double).
 *
 * Numbers with a fraction or an exponent are refused: the manifest has none, and a test that met
 * one should fail loudly rather than compare rounded values.
 */

/** A JSON value with exact integers. */
export type Json = null | boolean | bigint | string | Json[] | { [key: string]: Json };

/** Parses `source`; throws on anything that is not one JSON value. */
export function parseJson(source: string): Json {
  const parser = new Parser(source);
  const value = parser.value();
  parser.end();
  return value;
}

class Parser {
  private pos = 0;

  constructor(private readonly src: string) {}

  value(): Json {
    this.space();
    const c = this.src[this.pos];
    switch (c) {
      case "{":
        return this.object();
      case "[":
        return this.array();
      case '"':
        return this.string();
      case "t":
        return this.literal("true", true);
      case "f":
        return this.literal("false", false);
      case "n":
        return this.literal("null", null);
      default:
        return this.number();
    }
  }

  end(): void {
    this.space();
    if (this.pos !== this.src.length) {
      this.fail("trailing characters");
    }
  }

  private object(): Json {
    const out: { [key: string]: Json } = {};
    this.pos++;
    this.space();
    if (this.src[this.pos] === "}") {
      this.pos++;
      return out;
    }
    // Bounded by the input: every turn consumes at least a key.
    for (;;) {
      this.space();
      const key = this.string();
      this.space();
      this.expect(":");
      out[key] = this.value();
      this.space();
      if (this.src[this.pos] === ",") {
        this.pos++;
        continue;
      }
      this.expect("}");
      return out;
    }
  }

  private array(): Json {
    const out: Json[] = [];
    this.pos++;
    this.space();
    if (this.src[this.pos] === "]") {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.space();
      if (this.src[this.pos] === ",") {
        this.pos++;
        continue;
      }
      this.expect("]");
      return out;
    }
  }

  private string(): string {
    this.expect('"');
    let out = "";
    for (;;) {
      const c = this.src[this.pos];
      if (c === undefined) {
        this.fail("unterminated string");
      }
      this.pos++;
      if (c === '"') {
        return out;
      }
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = this.src[this.pos++];
      switch (e) {
        case '"':
        case "\\":
        case "/":
          out += e;
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const hex = this.src.slice(this.pos, this.pos + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
            this.fail("bad \\u escape");
          }
          // Surrogate pairs arrive as two escapes and join up in the UTF-16 string.
          out += String.fromCharCode(parseInt(hex, 16));
          this.pos += 4;
          break;
        }
        default:
          this.fail("bad escape");
      }
    }
  }

  private number(): bigint {
    const match = /^-?(0|[1-9][0-9]*)/.exec(this.src.slice(this.pos, this.pos + 400));
    if (match === null) {
      this.fail("unexpected character");
    }
    this.pos += match[0].length;
    const next = this.src[this.pos];
    if (next === "." || next === "e" || next === "E") {
      this.fail("a number that is not an integer");
    }
    return BigInt(match[0]);
  }

  private literal<T extends Json>(word: string, value: T): T {
    if (this.src.startsWith(word, this.pos)) {
      this.pos += word.length;
      return value;
    }
    this.fail("unexpected word");
  }

  private expect(c: string): void {
    if (this.src[this.pos] !== c) {
      this.fail(`expected ${c}`);
    }
    this.pos++;
  }

  private space(): void {
    while (/[ \t\r\n]/.test(this.src[this.pos] ?? "")) {
      this.pos++;
    }
  }

  private fail(why: string): never {
    throw new SyntaxError(`JSON: ${why} at offset ${this.pos}`);
  }
}
