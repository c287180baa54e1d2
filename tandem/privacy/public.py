"""Well-known public figures and fictional characters: names that are not the user's data.

"Pretend to be Albert Einstein", "a conversation between Socrates and Marie Curie": redacting
these breaks the prompt and protects no one. The list below is general knowledge (historical
figures, scientists, writers, artists, musicians, athletes, heads of state, founders of large
companies, famous fictional characters), written by hand from general knowledge. MT-Bench's
prompts had been read before it was written, so ``tandem bench privacy`` reports MT-Bench with
and without it. A name is matched in full only ("Elon Musk", not "Musk" alone, nor "Elon"); one
word is listed only where it is hardly a given name ("Socrates", "Gandalf", not "Mario"), and a
name after a cue or a title ("my colleague Bill Gates") is redacted all the same.

Limit: a private person who shares a famous full name, mentioned without a cue, is not
redacted.
"""

from __future__ import annotations

import functools
import unicodedata

_NAMES = """
Socrates; Plato; Aristotle; Pythagoras; Euclid; Archimedes; Confucius; Buddha; Julius Caesar;
Augustus; Cleopatra; Alexander the Great; Genghis Khan; Attila the Hun; Charlemagne; Joan of
Arc; Marco Polo; Christopher Columbus; Ferdinand Magellan; Vasco da Gama; Leonardo da Vinci;
Michelangelo; Rembrandt; Vincent van Gogh; Pablo Picasso; Claude Monet; Salvador Dali; Salvador
Dalí; Frida Kahlo; Andy Warhol; Johannes Vermeer; Wolfgang Amadeus Mozart; Mozart; Ludwig van
Beethoven; Beethoven; Johann Sebastian Bach; Frédéric Chopin; Pyotr Tchaikovsky; Antonio
Vivaldi; Richard Wagner; Giuseppe Verdi; William Shakespeare; Shakespeare; Charles Dickens;
Jane Austen; Leo Tolstoy; Fyodor Dostoevsky; Mark Twain; Ernest Hemingway; George Orwell;
Virginia Woolf; James Joyce; Franz Kafka; Victor Hugo; Miguel de Cervantes; Dante Alighieri;
Johann Wolfgang von Goethe; Goethe; Edgar Allan Poe; Oscar Wilde; Emily Dickinson; Walt
Whitman; Agatha Christie; Arthur Conan Doyle; J.R.R. Tolkien; J. R. R. Tolkien; C.S. Lewis; C.
S. Lewis; J.K. Rowling; J. K. Rowling; Stephen King; Toni Morrison; Maya Angelou; Gabriel
García Márquez; Haruki Murakami; Harper Lee; F. Scott Fitzgerald; John Steinbeck; Homer
Simpson; Isaac Newton; Albert Einstein; Galileo Galilei; Galileo; Nicolaus Copernicus; Johannes
Kepler; Charles Darwin; Marie Curie; Pierre Curie; Nikola Tesla; Thomas Edison; Alexander
Graham Bell; Stephen Hawking; Richard Feynman; Niels Bohr; Max Planck; Werner Heisenberg; Erwin
Schrödinger; Alan Turing; Ada Lovelace; Charles Babbage; John von Neumann; Carl Sagan; Sigmund
Freud; Carl Jung; Louis Pasteur; Gregor Mendel; Dmitri Mendeleev; Rosalind Franklin; Florence
Nightingale; Jane Goodall; Neil Armstrong; Buzz Aldrin; Yuri Gagarin; Sally Ride; Immanuel
Kant; Friedrich Nietzsche; Karl Marx; Adam Smith; John Locke; René Descartes; Jean-Jacques
Rousseau; Voltaire; Thomas Hobbes; David Hume; Niccolò Machiavelli; Machiavelli; Simone de
Beauvoir; Jean-Paul Sartre; John Maynard Keynes; Milton Friedman; Sun Tzu; George Washington;
Thomas Jefferson; Abraham Lincoln; Benjamin Franklin; Theodore Roosevelt; Franklin D.
Roosevelt; Franklin Roosevelt; John F. Kennedy; JFK; Martin Luther King; Martin Luther King
Jr.; Martin Luther; Winston Churchill; Queen Victoria; Queen Elizabeth; Elizabeth II; Napoleon;
Napoleon Bonaparte; Mahatma Gandhi; Gandhi; Nelson Mandela; Mother Teresa; Rosa Parks; Malcolm
X; Che Guevara; Fidel Castro; Vladimir Lenin; Joseph Stalin; Adolf Hitler; Mao Zedong; Barack
Obama; Michelle Obama; Donald Trump; Joe Biden; Hillary Clinton; Bill Clinton; George W. Bush;
George Bush; Ronald Reagan; Richard Nixon; Margaret Thatcher; Tony Blair; Angela Merkel;
Emmanuel Macron; Vladimir Putin; Xi Jinping; Narendra Modi; Justin Trudeau; Boris Johnson;
Kamala Harris; Volodymyr Zelensky; Pope Francis; Dalai Lama; Princess Diana; Prince Harry;
Prince William; King Charles; Elon Musk; Bill Gates; Steve Jobs; Steve Wozniak; Mark
Zuckerberg; Jeff Bezos; Larry Page; Sergey Brin; Tim Cook; Satya Nadella; Sundar Pichai; Warren
Buffett; Sam Altman; Jack Ma; Henry Ford; Walt Disney; Oprah Winfrey; Richard Branson; Jensen
Huang; Linus Torvalds; Guido van Rossum; Tim Berners-Lee; Dennis Ritchie; Grace Hopper; Jack
Dorsey; Larry Ellison; Michael Jordan; LeBron James; Kobe Bryant; Muhammad Ali; Serena
Williams; Venus Williams; Roger Federer; Rafael Nadal; Novak Djokovic; Lionel Messi; Cristiano
Ronaldo; Pelé; Pele; Diego Maradona; Usain Bolt; Michael Phelps; Tiger Woods; Simone Biles; Tom
Brady; Babe Ruth; Wayne Gretzky; Lewis Hamilton; Michael Schumacher; Ayrton Senna; Zinedine
Zidane; The Beatles; John Lennon; Paul McCartney; Elvis Presley; Michael Jackson; Beyoncé;
Beyonce; Taylor Swift; Bob Dylan; David Bowie; Freddie Mercury; Lady Gaga; Rihanna; Frank
Sinatra; Whitney Houston; Kanye West; Ed Sheeran; Billie Eilish; Elton John; Mick Jagger; Jimi
Hendrix; Kurt Cobain; Bob Marley; Louis Armstrong; Miles Davis; Marilyn Monroe; Charlie
Chaplin; Audrey Hepburn; Tom Hanks; Meryl Streep; Leonardo DiCaprio; Brad Pitt; Angelina Jolie;
Morgan Freeman; Denzel Washington; Tom Cruise; Will Smith; Scarlett Johansson; Keanu Reeves;
Robert Downey Jr.; Johnny Depp; Jackie Chan; Bruce Lee; Steven Spielberg; Alfred Hitchcock;
Stanley Kubrick; Quentin Tarantino; Christopher Nolan; Martin Scorsese; James Cameron; Arnold
Schwarzenegger; Clint Eastwood; Sherlock Holmes; Dr. Watson; Hercule Poirot; James Bond; Harry
Potter; Hermione Granger; Ron Weasley; Albus Dumbledore; Dumbledore; Lord Voldemort; Voldemort;
Severus Snape; Frodo Baggins; Bilbo Baggins; Gandalf; Aragorn; Samwise Gamgee; Gollum; Luke
Skywalker; Darth Vader; Han Solo; Princess Leia; Leia Organa; Obi-Wan Kenobi; Yoda; Anakin
Skywalker; Tony Stark; Iron Man; Peter Parker; Spider-Man; Bruce Wayne; Batman; Clark Kent;
Superman; Wonder Woman; Diana Prince; Steve Rogers; Captain America; Bruce Banner; Natasha
Romanoff; Wolverine; Mickey Mouse; Donald Duck; Bugs Bunny; Winnie the Pooh; Mona Lisa; Romeo
and Juliet; King Lear; Don Quixote; Robinson Crusoe; Alice in Wonderland; Peter Pan; Captain
Hook; Tinker Bell; Cinderella; Snow White; Pinocchio; Oliver Twist; Ebenezer Scrooge; Elizabeth
Bennet; Mr. Darcy; Fitzwilliam Darcy; Jay Gatsby; Atticus Finch; Holden Caulfield; Captain
Ahab; Dracula; Count Dracula; Frankenstein; Victor Frankenstein; Tarzan; Robin Hood; King
Arthur; Santa Claus; Sheldon Cooper; Walter White; Jesse Pinkman; Tyrion Lannister; Jon Snow;
Daenerys Targaryen; Homer J. Simpson; Bart Simpson; Lisa Simpson; Marge Simpson; Indiana Jones;
Forrest Gump; Rocky Balboa; Jack Sparrow; Katniss Everdeen; Lara Croft; Super Mario; Sonic the
Hedgehog; Pikachu; Shrek; Buzz Lightyear; Charlie Brown; Scooby-Doo; Kermit the Frog; Optimus
Prime; Ned Stark; Arya Stark; Sansa Stark; Jesus Christ; Prophet Muhammad; Virgin Mary; Mary
Magdalene
"""


def _normal(name: str) -> str:
    name = name.strip().removesuffix("'s").removesuffix("’s")
    folded = unicodedata.normalize("NFKD", name.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(plain.replace(".", ". ").split()).replace(" .", ".")


@functools.cache
def _public() -> frozenset[str]:
    return frozenset(_normal(n) for n in _NAMES.replace("\n", " ").split(";") if n.strip())


def is_public_figure(name: str) -> bool:
    """Whether ``name`` (a whole span) is one of the well-known names above."""
    return _normal(name) in _public()
