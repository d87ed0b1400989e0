"""Sentences for the quantization benchmarks: the search and static calibration see CALIBRATION
only; every accuracy figure is measured on HELD_OUT."""

CALIBRATION = [
    "A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
    "The stock market fell sharply today.", "Two dogs play in the snow.", "How do I reset my password?",
    "Quantum computers use qubits.", "She plays the violin beautifully.",
    "The weather will be sunny tomorrow afternoon.", "Please send me the report by Friday.",
    "A cat is sleeping on the warm windowsill.", "The train to Paris leaves at nine.",
    "Researchers published a new study on climate change.", "He scored the winning goal in the final minute.",
    "My laptop battery drains too quickly.", "They are planting trees in the park.",
    "The museum opens a new exhibition on ancient Egypt next week.", "Can you recommend a good Italian restaurant?",
    "Interest rates are expected to rise again this year.", "The baby laughed at the puppy.",
    "Our flight was delayed because of the storm.", "The recipe calls for two cups of flour.",
    "Solar panels convert sunlight into electricity.", "The committee rejected the proposal after a long debate.",
]
HELD_OUT = [
    "Someone is having a meal.", "A woman is slicing an onion.", "The film was great fun.",
    "Shares dropped at the opening bell.", "Children are building a snowman.", "I forgot my login details.",
    "Superconducting circuits can store quantum states.", "He practices the cello every evening.",
    "It will rain heavily over the weekend.", "The invoice must be paid within thirty days.",
    "A dog is chasing a ball across the garden.", "The bus to the airport runs every twenty minutes.",
    "Scientists warn that sea levels are rising faster than expected.", "The team celebrated their championship win.",
    "My phone screen cracked when I dropped it.", "Volunteers cleaned up the beach on Saturday.",
    "The library has extended its opening hours for students.", "Where can I find a cheap hotel near the station?",
    "The central bank kept its key rate unchanged.", "The toddler is playing with colourful blocks.",
    "Heavy snow closed several mountain roads.", "Bake the cake for forty minutes at medium heat.",
    "Wind turbines generate power even on cloudy days.", "The council voted to build a new bridge.",
]
