"""Writes easy_functions.jsonl: 240 easy MBPP-style Python problems (one-line specs of small functions, 3 asserts
each) that SmolLM2-135M-Instruct partly solves. Written for layerscout by its code helper; every problem comes
from the families below, and every assert's expected value is computed by running the family's reference solution
here (the references are this file's own code). Deterministic: rerunning rewrites the same file.

Run from the repository root: python data/code/make_easy_functions.py
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("easy_functions.jsonl")
WORDS = ["apple", "hello", "python", "banana", "code", "level", "sky", "tree", "a", ""]
INTS = list(range(-6, 13))


def ints(rng, n=1):
    return tuple(rng.choice(INTS) for _ in range(n))


def word(rng):
    return (rng.choice(WORDS),)


def int_list(rng):
    return ([rng.randint(-5, 20) for _ in range(rng.randint(1, 6))],)


def words_pair(rng):
    return (rng.choice(WORDS), rng.choice(WORDS))


# (name, signature args, what the function returns, reference solution, input drawer); {k} is a constant.
FAMILIES = [
    ("add_{k}", "x", "x plus {k}", lambda k: lambda x: x + k, ints),
    ("subtract_{k}", "x", "x minus {k}", lambda k: lambda x: x - k, ints),
    ("multiply_by_{k}", "x", "x multiplied by {k}", lambda k: lambda x: x * k, ints),
    ("is_greater_than_{k}", "x", "True if x is greater than {k}, else False", lambda k: lambda x: x > k, ints),
    ("is_divisible_by_{k}", "n", "True if n is divisible by {k}, else False", lambda k: lambda n: n % k == 0, ints),
    ("remainder_by_{k}", "n", "the remainder of n divided by {k}", lambda k: lambda n: n % k, ints),
    ("repeat_{k}_times", "s", "the string s repeated {k} times", lambda k: lambda s: s * k, word),
    ("sum_plus_{k}", "nums", "the sum of the list nums plus {k}", lambda k: lambda nums: sum(nums) + k, int_list),
    ("first_{k}_chars", "s", "the first {k} characters of the string s", lambda k: lambda s: s[:k], word),
]
SINGLES = [
    ("square", "x", "x squared", lambda x: x * x, ints),
    ("cube", "x", "x cubed", lambda x: x ** 3, ints),
    ("double", "x", "x times two", lambda x: 2 * x, ints),
    ("negate", "x", "the negative of x", lambda x: -x, ints),
    ("absolute_value", "x", "the absolute value of x", abs, ints),
    ("is_even", "n", "True if n is even, else False", lambda n: n % 2 == 0, ints),
    ("is_odd", "n", "True if n is odd, else False", lambda n: n % 2 == 1, ints),
    ("is_positive", "x", "True if x is greater than zero, else False", lambda x: x > 0, ints),
    ("is_negative", "x", "True if x is less than zero, else False", lambda x: x < 0, ints),
    ("max_of_two", "a, b", "the larger of a and b", max, lambda rng: ints(rng, 2)),
    ("min_of_two", "a, b", "the smaller of a and b", min, lambda rng: ints(rng, 2)),
    ("add", "a, b", "the sum of a and b", lambda a, b: a + b, lambda rng: ints(rng, 2)),
    ("multiply", "a, b", "the product of a and b", lambda a, b: a * b, lambda rng: ints(rng, 2)),
    ("difference", "a, b", "a minus b", lambda a, b: a - b, lambda rng: ints(rng, 2)),
    ("is_equal", "a, b", "True if a equals b, else False", lambda a, b: a == b, lambda rng: ints(rng, 2)),
    ("rectangle_area", "width, height", "the area of a rectangle with the given width and height",
     lambda w, h: w * h, lambda rng: ints(rng, 2)),
    ("reverse_string", "s", "the string s reversed", lambda s: s[::-1], word),
    ("string_length", "s", "the number of characters in the string s", len, word),
    ("to_upper", "s", "the string s in upper case", str.upper, word),
    ("first_char", "s", "the first character of the non-empty string s", lambda s: s[0],
     lambda rng: (rng.choice(WORDS[:-1]),)),
    ("last_char", "s", "the last character of the non-empty string s", lambda s: s[-1],
     lambda rng: (rng.choice(WORDS[:-1]),)),
    ("is_palindrome", "s", "True if the string s reads the same backwards, else False", lambda s: s == s[::-1], word),
    ("concat", "a, b", "the string a followed by the string b", lambda a, b: a + b, words_pair),
    ("count_a", "s", "how many times the letter 'a' appears in the string s", lambda s: s.count("a"), word),
    ("sum_list", "nums", "the sum of the numbers in the list nums", sum, int_list),
    ("max_list", "nums", "the largest number in the non-empty list nums", max, int_list),
    ("min_list", "nums", "the smallest number in the non-empty list nums", min, int_list),
    ("list_length", "nums", "the number of items in the list nums", len, int_list),
    ("first_item", "nums", "the first item of the non-empty list nums", lambda nums: nums[0], int_list),
    ("last_item", "nums", "the last item of the non-empty list nums", lambda nums: nums[-1], int_list),
    ("double_all", "nums", "a new list with every number in nums doubled", lambda nums: [2 * n for n in nums],
     int_list),
    ("count_positive", "nums", "how many numbers in the list nums are greater than zero",
     lambda nums: sum(n > 0 for n in nums), int_list),
    ("sum_of_squares", "nums", "the sum of the squares of the numbers in nums", lambda nums: sum(n * n for n in nums),
     int_list),
]
CONSTANTS = range(2, 25)


def problems() -> list[dict]:
    """Every problem as a JSONL row (id, prompt, entry_point, tests), in a fixed order."""
    specs = [(name.format(k=k), args, what.format(k=k), ref(k), draw)
             for name, args, what, ref, draw in FAMILIES for k in CONSTANTS]
    specs += SINGLES
    rows = []
    for name, args, what, ref, draw in specs:
        rng = random.Random(name)
        inputs: list[tuple] = []
        while len(inputs) < 3:
            i = draw(rng)
            if i not in inputs:
                inputs.append(i)
        tests = [f"assert {name}({', '.join(map(repr, i))}) == {ref(*i)!r}" for i in inputs]
        rows.append({"id": f"easy/{name}", "entry_point": name, "tests": tests,
                     "prompt": f"Write a Python function `{name}({args})` that returns {what}."})
    return rows


if __name__ == "__main__":
    rows = problems()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} problems to {OUT}")
