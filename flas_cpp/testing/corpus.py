"""A small, deterministic English corpus for training the test models' tokenizer.

The sentences cover the themes of the demo concepts and prompts so that the trained
SentencePiece model has whole-word pieces for them; the rest is combinatorial filler.
"""

from __future__ import annotations

import random

SENTENCES = [
    "Tell me about your day.",
    "How do I make a cup of tea?",
    "Explain what a database index is.",
    "Give me three tips for learning a new language.",
    "What should I pack for a weekend trip?",
    "Describe how a bicycle works.",
    "Write a short note thanking a colleague.",
    "Why is the sky blue?",
    "Suggest a name for a small bakery.",
    "How can I improve my sleep?",
    "Summarize the plot of a heist story in two sentences.",
    "What are the benefits of regular exercise?",
    "Explain recursion to a beginner.",
    "Plan a simple dinner for four people.",
    "What is the difference between weather and climate?",
    "Write a limerick about a cat.",
    "How does a refrigerator keep food cold?",
    "Give advice for a first job interview.",
    "What makes a good password?",
    "Describe a sunrise over the mountains.",
    "Talk like a pirate.",
    "Respond as a noir detective.",
    "Always reference places in Minnesota.",
    "Frame everything as a musical performance.",
    "Speak in programming terms.",
    "Use mathematical notation.",
    "Mention the weather in every sentence.",
    "Ahoy, matey! The ship sails at dawn with a chest of gold.",
    "The rain fell on the city like a bad memory, and the detective lit a cigarette.",
    "From Duluth to Minneapolis, the lakes of Minnesota shine in the summer.",
    "The orchestra rose, the violins sang, and the drums thundered.",
    "Define a function, call it in a loop, and return the result.",
    "Let x be a real number such that x squared equals two.",
    "It is sunny and warm today, with a light breeze from the west.",
    "Hear ye, hear ye, the king proclaims a feast for all the realm!",
    "Stir the sauce slowly, add salt and pepper, and let it simmer.",
    "The stars and planets drift across the dark sky of outer space.",
    "Thank you so much, I am deeply grateful for your help.",
    "And he shoots, he scores, what a goal for the home team!",
    "The red apple, the green leaf, and the blue sea.",
    "Julius Caesar crossed the Rubicon and Rome was never the same.",
    "This is absolutely amazing, I love it so much!",
    "The party of the first part hereby agrees to the terms of the contract.",
    "Expect clouds in the morning and showers by the afternoon.",
    "The cat curled up on the warm windowsill and purred.",
    "Set the sails, ride the waves, and steer by the lighthouse.",
    "An old silent pond, a frog jumps into the pond, splash, silence again.",
]

SUBJECTS = ["the pirate", "the detective", "my friend", "the cat", "the chef", "a student",
            "the captain", "the engineer", "the singer", "the farmer", "the herald", "our team"]
VERBS = ["found", "cooked", "explained", "described", "wrote", "sang", "counted", "painted",
         "remembered", "planned", "measured", "announced"]
OBJECTS = ["a map of the island", "the secret recipe", "a simple program", "the evening sky",
           "a letter to the king", "the weather report", "an old song", "the final score",
           "a list of numbers", "the lakes of the north", "a cup of hot tea", "the broken bicycle"]
ENDINGS = [".", "!", "?", " yesterday.", " in the morning.", " with great care.",
           " before the storm.", " at the market."]


def corpus_lines(seed: int = 0, n_filler: int = 3000) -> list[str]:
    """Every fixed sentence plus `n_filler` seeded combinations, digits and symbols included."""
    rng = random.Random(seed)
    lines = list(SENTENCES)
    for i in range(n_filler):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
        if i % 7 == 0:
            s += f" It cost {rng.randint(1, 999)} coins, about {rng.random() * 100:.2f}%."
        lines.append(s[0].upper() + s[1:])
    return lines
