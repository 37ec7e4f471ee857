package mllm

// tinyCorpus is the built-in text the tiny tokenizer's byte-level BPE is
// trained on: the M3-AGIQA round-1/round-2 wording, rating words, sample
// teacher descriptions and AGIQA-3K style prompts.
const tinyCorpus = `Please closely examine this AI-generated image and provide a detailed analysis of how well it aligns with the original prompt: 'french fastfood adventure pixar movie poster , soft lighting, abstract style'.
Based on your analysis, could you please rate the image's alignment with its original prompt? Choose one word from the following list: [bad, poor, fair, good, excellent], where the words indicate the degree of alignment from low to high.
The image fails to reflect almost all elements of the prompt. There are no recognizable elements of a French fast food adventure, Pixar style, or a movie poster. The abstract style is present, but not in a way that conveys meaning relevant to the prompt.
Take a close look at this AI-generated image and tell me everything you can about what you see. It's original prompt is: 'an uprising of disneyland costumed characters, HDR lighting, baroque style'. Could you please help to analyze the image's quality?
Now based on your analysis, could you please help to rate the image based on it's overall quality? Please give me one word from the list [bad, poor, fair, good, excellent]. Notice that quality word in the list means from low to high.
The image is blurry and lacks detail, particularly in the background figures. The lighting, while warm, doesn't effectively demonstrate HDR effects. The overall impression is impressionistic rather than sharp or realistic.
Examine this AI-generated image and analyze its authenticity: does it look like a real photograph or painting made by a person? Rate the authenticity with one word from [bad, poor, fair, good, excellent].
The image successfully portrays an atomic cloud fire explosion contained within a snow globe, as requested in the prompt. The use of warm colors is also evident in the lighting and background.
bad poor fair good excellent quality correspondence authenticity alignment
beautiful topaz girl dark, anthropomorphic thresher shark in knight armor dropping his sword
cute fluffy baby cheetah lion hybrid mixed creature character concept, a very drunk person named aaron
a space shuttle flying in space, a girl with rainbow in white shirt, a portrait photo of a beautiful female android
a crocodile in a new york sewer, a portrait of girl bard in red dress, cute fluffy baby lop eared bunny rabbit
edwardian headshot photograph of a pale russian woman, rat portrait as a warrior, eiffel tower drenched in blood
man hating his printer, a biomechanical cybertronic frog, a portrait of girl alchemist in blue dress
a beautiful painting of old golden samovars of russian empire, statue of a man, digital painting of a lake at sunset
a female warrior in charming phenix armor, a gummy bear performing at woodstock concert
a bokeh photo of a zombie gardener admiring flowers, a blue abyss underwater concept art, concept art of giant ogres
cute soul ghost in infinity mirror room, a mechanical human arm sticking out of the earth, a plasticine model of a goblin raider
a fantast beauty detailed elf with mermaid tail, an industrial geometric temple lab room
beautiful viking woman surrounded by treasure and gold, die cut sticker of a pair of lips, a man playing an invisible cello
a small grassland nestled in the hollow of a tree, sartre hugging a sad alien, an environmental concept art
photorealistic, 4k, 8k, highly detailed, oil painting, watercolor, anime style, sketch, HDR lighting, 1024 512 2025
User: Assistant: The image shows the prompt with good detail and colors; the composition is fair.
`
